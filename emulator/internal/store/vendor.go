package store

// Vendor names an emulated vendor. The values are the URL prefixes.
type Vendor string

// The emulated vendors.
const (
	Whoop Vendor = "whoop"
	Oura  Vendor = "oura"
)
