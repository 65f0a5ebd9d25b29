"""gradwatch's benchmark suite: overhead, detection quality, clipping efficacy (not part of the import path of `gradwatch`)."""
