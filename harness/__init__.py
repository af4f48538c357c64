"""The measurement engine: plan a case -> launch a distributed job -> the worker measures -> a result.

Importing this package loads no heavy backend; torch and transformers load where they are used.
"""
