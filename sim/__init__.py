"""A discrete-event simulator of an OpenWhisk GPU cluster that runs the invoker's real
container pool (``invoker.containerpool.pool``) and GPU layer (``invoker.gpu``) on simulated
time. ``python -m sim --help``; README section "Cluster simulation"."""
