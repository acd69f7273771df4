# Baseline: same wrapper, nothing changed.
