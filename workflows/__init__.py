"""Orchestration: the Argo DAG (Hera), rendering, submission, and the local executor.

Nothing here processes images; every task runs the `shardflow augment` or `shardflow verify`
command of `shardflow.steps`, in a pod or in a local worker process.
"""
