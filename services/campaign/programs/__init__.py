"""Referral and loyalty programs (see docs/programs.md)."""
