"""Named DICOM status codes and association rejection reasons (PS3.7 Annex C, PS3.8 9.3.4)."""

from __future__ import annotations

# C-STORE / C-ECHO response statuses (PS3.4 B.2.3, PS3.7 C)
SUCCESS = 0x0000
WARNING_COERCION_OF_DATA_ELEMENTS = 0xB000
WARNING_ELEMENTS_DISCARDED = 0xB006
WARNING_DATASET_DOES_NOT_MATCH_SOP_CLASS = 0xB007
REFUSED_OUT_OF_RESOURCES = 0xA700
ERROR_DATASET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
ERROR_CANNOT_UNDERSTAND = 0xC210
PROCESSING_FAILURE = 0x0110
SOP_CLASS_NOT_SUPPORTED = 0x0122
NO_SUCH_SOP_INSTANCE = 0x0112  # e.g. a Storage Commitment report for an unknown transaction
# A UID already stored for another patient or study (refused, never merged); 0xCxxx: "cannot understand"
ERROR_UID_CONFLICT = 0xC230

# Further N-EVENT-REPORT failures (PS3.7 C.4, 10.1.1.1.8): how a Storage Commitment report is refused
NO_SUCH_EVENT_TYPE = 0x0113  # an event type other than 1 (all committed) or 2 (some failed)
INVALID_ARGUMENT_VALUE = 0x0115  # the report does not list exactly the objects sent, or contradicts its event type
CLASS_INSTANCE_CONFLICT = 0x0119  # an instance reported with another SOP class than the one sent
NOT_AUTHORIZED = 0x0124  # the reporter is not the destination the objects were sent to

# Storage Commitment Push Model (PS3.4 J)
STORAGE_COMMITMENT_PUSH = "1.2.840.10008.1.20.1"
STORAGE_COMMITMENT_INSTANCE = "1.2.840.10008.1.20.1.1"  # its well-known SOP instance

# A-ASSOCIATE-RJ (result, source, reason)
REJECTED_PERMANENT = 0x01
REJECTED_TRANSIENT = 0x02
SOURCE_SERVICE_USER = 0x01
SOURCE_PROVIDER_PRESENTATION = 0x03
REASON_CALLING_AE_NOT_RECOGNIZED = 0x03
REASON_CALLED_AE_NOT_RECOGNIZED = 0x07
REASON_LOCAL_LIMIT_EXCEEDED = 0x02

_NAMES = {
    SUCCESS: "Success",
    WARNING_COERCION_OF_DATA_ELEMENTS: "Warning: coercion of data elements",
    WARNING_ELEMENTS_DISCARDED: "Warning: elements discarded",
    WARNING_DATASET_DOES_NOT_MATCH_SOP_CLASS: "Warning: data set does not match SOP class",
    REFUSED_OUT_OF_RESOURCES: "Refused: out of resources",
    ERROR_DATASET_DOES_NOT_MATCH_SOP_CLASS: "Error: data set does not match SOP class",
    ERROR_CANNOT_UNDERSTAND: "Error: cannot understand",
    PROCESSING_FAILURE: "Failure: processing failure",
    SOP_CLASS_NOT_SUPPORTED: "Failure: SOP class not supported",
    NO_SUCH_SOP_INSTANCE: "Failure: no such SOP instance",
    ERROR_UID_CONFLICT: "Error: UID already stored for another patient or study",
    NO_SUCH_EVENT_TYPE: "Failure: no such event type",
    INVALID_ARGUMENT_VALUE: "Failure: invalid argument value",
    CLASS_INSTANCE_CONFLICT: "Failure: class-instance conflict",
    NOT_AUTHORIZED: "Refused: not authorized",
}


def describe(status: int) -> str:
    """Readable name of a status code, e.g. ``0xA700 Refused: out of resources``."""
    name = _NAMES.get(status)
    if name is None:
        if 0xA700 <= status <= 0xA7FF:
            name = "Refused: out of resources"
        elif 0xC000 <= status <= 0xCFFF:
            name = "Error: cannot understand"
        elif 0xB000 <= status <= 0xBFFF:
            name = "Warning"
        else:
            name = "Failure"
    return f"0x{status:04X} {name}"


def is_success(status: int) -> bool:
    """True for success and warning statuses (the instance was stored)."""
    return status == SUCCESS or 0xB000 <= status <= 0xBFFF
