"""Forget sets: which training examples to unlearn."""
from .interactions import REC_KINDS
from .parse import AMOUNT_RULE, parse_amount, resolve_amount
from .specs import KINDS, ForgetSet, build_forget_set

__all__ = ["AMOUNT_RULE", "KINDS", "REC_KINDS", "ForgetSet", "build_forget_set", "parse_amount", "resolve_amount"]
