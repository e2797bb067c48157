"""Engine-agnostic training: steps (plain and GradCache), batching, the loop, checkpoints. No Ray here."""
