"""The budgeted submit on the hidden test set: the plan's arithmetic and deadlines (`budget`, no torch), the
calibration that times TTT and prediction on the real file and devices (`calibration`), and the flow that runs
calibrate, plan, TTT, predict and write in turn (`submit_flow`), driven by stages.submit."""
