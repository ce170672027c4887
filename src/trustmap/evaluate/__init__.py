"""How good are the answers: detection (OOD, adversarial, misclassification), calibration, and
the quality of explanations, each measured on scores and arrays the earlier layers produce."""
