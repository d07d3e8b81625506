"""Side-by-side comparisons, diagnosis and the results reports."""
