"""Privacy for PyFed: the building blocks of secure aggregation (SecAgg/SecAgg+)."""
