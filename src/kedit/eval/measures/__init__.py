"""The modules that register kedit's measures into :data:`kedit.eval.metric.METRICS`."""
