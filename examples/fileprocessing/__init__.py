"""The seed's file-processing example: download, process and upload one file on one worker.

Each worker keeps files in its own scratch directory, which no other worker can see. So the
three steps only work if the same worker runs all of them: that is what a session guarantees.
"""
