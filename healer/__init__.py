"""The healer: supervises the fleet, relaunches dead or silent workers, remediates the host."""
