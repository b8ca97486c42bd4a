"""Results: the candidates file (`candidates`), grading and clustering a problem's samples
with the paper's metrics and bootstrap intervals (`voting`), the evaluator's diagnostics
(`diagnostics`), and tables, report.md and plots (`report`). No JAX, no TensorFlow."""
