"""FL_Experiment's backends: how the server and client processes of an experiment are started."""
