class FL_Experiment: pass
