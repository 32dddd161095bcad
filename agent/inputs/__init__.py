"""What the probe measures against: Citizen Lab test lists, their refresh, blockpage fingerprints.
"""
