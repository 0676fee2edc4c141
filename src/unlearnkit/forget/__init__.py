"""Forget sets: which training examples to unlearn."""
from .interactions import REC_KINDS
from .specs import (
    AMOUNT_RULE,
    KINDS,
    ForgetSet,
    build_forget_set,
    parse_amount,
    resolve_amount,
)

__all__ = ["AMOUNT_RULE", "KINDS", "REC_KINDS", "ForgetSet", "build_forget_set", "parse_amount", "resolve_amount"]
