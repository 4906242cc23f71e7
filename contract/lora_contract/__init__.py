"""What the operator, the trainer and users share: the LoraTrainingJob API models, the trainer's
progress events and report, and the XP table. Neither side owns it; both import it."""
