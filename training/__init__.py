"""Training side of InstructUE: synthetic data, UserQA, the trainer and the evaluation."""
