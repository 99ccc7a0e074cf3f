"""temseg: live U-Net segmentation of HRTEM frames next to the microscope."""

__version__ = "0.1.0"
