"""What people run around a run: the operator's console, the report, replays, the demo, benches,
the LSL bridge, ROI definition, fidelity figures and the OpenNFT import."""
