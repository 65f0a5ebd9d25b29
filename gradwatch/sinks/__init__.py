"""Sinks: where finished steps and alerts go (console, logging, JSONL, TensorBoard); each is a `base.Sink`."""
