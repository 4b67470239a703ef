"""edwards25519 in plain Python integers, for tests that need points the libraries will not make.

Slow and not constant-time: only for building test inputs (small-order points,
points outside the prime-order subgroup, non-canonical encodings) and for
checking the libraries against RFC 8032 from first principles.
"""

from __future__ import annotations

__all__ = ["IDENTITY", "L", "P", "Point", "add", "enc", "encode_raw", "mul", "neg", "x_even"]

#: The field prime and the order of the prime-order subgroup (RFC 8032 5.1).
P = 2**255 - 19
L = 2**252 + 27742317777372353535851937790883648493
D = -121665 * pow(121666, P - 2, P) % P
Point = tuple[int, int]
IDENTITY: Point = (0, 1)


def add(a: Point, b: Point) -> Point:
    """Affine addition on -x^2 + y^2 = 1 + d x^2 y^2 (complete for edwards25519)."""
    (x1, y1), (x2, y2) = a, b
    t = D * x1 * x2 * y1 * y2 % P
    return (x1 * y2 + x2 * y1) * pow(1 + t, P - 2, P) % P, (y1 * y2 + x1 * x2) * pow(1 - t, P - 2, P) % P


def mul(k: int, point: Point) -> Point:
    out = IDENTITY
    while k:
        if k & 1:
            out = add(out, point)
        point, k = add(point, point), k >> 1
    return out


def neg(point: Point) -> Point:
    return (-point[0]) % P, point[1]


def x_even(y: int) -> int | None:
    """The even x with (x, y) on the curve, or None (RFC 8032 5.1.3 without the sign bit)."""
    xx = (y * y - 1) * pow(D * y * y + 1, P - 2, P) % P
    x = pow(xx, (P + 3) // 8, P)
    if (x * x - xx) % P:
        x = x * pow(2, (P - 1) // 4, P) % P
    if (x * x - xx) % P:
        return None
    return P - x if x & 1 else x


def enc(point: Point) -> bytes:
    """The canonical encoding (RFC 8032 5.1.2)."""
    return encode_raw(point[1], point[0] & 1)


def encode_raw(y: int, sign: int) -> bytes:
    """Any 255-bit ``y`` with a sign bit: lets a test spell a point non-canonically (y >= p)."""
    return (y | sign << 255).to_bytes(32, "little")
