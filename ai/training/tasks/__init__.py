"""The training tasks: one module each, registered with :func:`ai.training.task.register`.

Every module of this package is imported when a task is looked up, so a new
task is one new file here.
"""
