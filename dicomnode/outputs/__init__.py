"""Stage 4, the results as DICOM: SEG, TID 1500 SR and Secondary Capture key images, written durably."""
