"""The compiled call path of the client (farm/client/callpath.c), built where a C compiler and Python's headers
are found; without them the package installs all the same and calls take the pure-Python path."""

from setuptools import Extension, setup

setup(ext_modules=[Extension("farm.client._callpath", ["farm/client/callpath.c"], optional=True)])
