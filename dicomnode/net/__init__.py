"""Stage 1, the network edge: the Storage SCP (with its receive fast path) and the SCU side.

The listener hands each received dataset to a :class:`~dicomnode.net.handlers.StoreHandler`
and answers with the status it returns; it knows nothing of files, series or jobs.
"""
