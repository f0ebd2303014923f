"""The report's parts: the comparison table (`table`), the pictures (`plots`), one run's own
picture (`run_figure`) and the study view across learning rates (`study`)."""
