"""A GPU-style scenario: workers declare how many GPUs they have, sessions ask for some."""
