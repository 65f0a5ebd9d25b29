"""Actions: gradient clipping policies and the non-finite guard (run before optimizer.step)."""
