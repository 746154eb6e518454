"""Where knowledge sits: causal traces of many facts, their average indirect effect, and the
files ``kedit trace`` writes (the tracing itself is :mod:`kedit.model.causal_trace`)."""
