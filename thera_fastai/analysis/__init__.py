"""analysis/: what a run says: its report and plots, comparisons of runs, the label audit, Grad-CAM, the data explorer."""
