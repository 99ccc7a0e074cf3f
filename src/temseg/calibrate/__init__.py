"""temseg.calibrate"""
