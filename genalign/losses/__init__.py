"""Pure distillation losses (tensors in, loss / tensors out): DMD / DMD2 (``dmd``), RTDMD (``rtdmd``) and the
R_dm / GNDM / GNDMR reconstruction (``gndm``). ``distill`` re-exports all of them. METHODS.md §8–§10."""
