# Dates in the admin, one format everywhere (Django's own columns and the project's): numeric
# and with seconds, as people in customs offices read them and as the audit log needs them.
DATE_FORMAT = "Y-m-d"
DATETIME_FORMAT = "Y-m-d H:i:s"
SHORT_DATE_FORMAT = "Y-m-d"
SHORT_DATETIME_FORMAT = "Y-m-d H:i"
TIME_FORMAT = "H:i:s"
