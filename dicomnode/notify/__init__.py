"""Result notifications: the end of a job announced to a webhook or, as an HL7 v2 ORU^R01 over MLLP, to a RIS."""
