"""Ray Tune sweeps over nvembed training jobs (``nvembed tune``)."""
