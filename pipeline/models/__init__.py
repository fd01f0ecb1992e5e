"""Networks, the LightningModule and DataModule, and the train stage."""
