"""Closed-loop referrals: the referral Task's stages and who may move them, and what each move opens next."""
