"""Examples to copy from: a reward function defined outside the library."""
