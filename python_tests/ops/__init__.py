"""The ops one by one: smooth_max, blend, mimo_loss, the fused step ops, compile, CPU ISA variants, the package."""
