"""The demo app: job functions and the ``runapscheduler`` management command."""
