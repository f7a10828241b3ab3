"""The keys DINOCell writes into a napari layer's ``metadata``, in one place.

Views, the reader and the sample data read each other's layers through these keys (the Segment widget finds a
browser layer's plate and well, the browser finds the layers it added), so a key spelled two ways would silently
break the link between two docks.
"""

from __future__ import annotations

#: the field a channel layer belongs to (a CPJUMP1 field key, a reader's file stem path, a sample's seed)
FIELD = "dinocell_field"
#: the channel number (1–8, Mito … Brightfield) of a channel layer; "fluorescent_mean" for the browser's mean
CHANNEL = "channel"
#: where a JUMP browser field comes from: plate barcode, well, site, the CPJUMP1 root and the plate's folder
PLATE = "plate"
WELL = "well"
SITE = "site"
JUMP_ROOT = "jump_root"
PLATE_FOLDER = "plate_folder"
#: the file or folder a reader layer was read from
SOURCE_PATH = "source_path"
#: the name of the image a result layer (labels, distance map, PCA) was computed from
SOURCE_LAYER = "dinocell_source"
#: where a labels layer from a labels store comes from ("auto", "corrected", or "none" for an empty one)
LABELS_SOURCE = "labels_source"
#: a layer added (and updated in place) by a DINOCell view: the view's name and the layer's key in that view
OWNER = "dinocell_owner"
LAYER = "dinocell_layer"
