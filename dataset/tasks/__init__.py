"""Fine-tuning datasets: sequence classification/regression, token classification, question answering."""
