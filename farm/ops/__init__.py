"""Running a farm, on the host: the ``farm`` command, inventories, launching, toolchains, emulators, packing."""
