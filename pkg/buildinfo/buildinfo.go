// Package buildinfo says which build of the suite a binary is. Release
// builds (scripts/images.sh, deploy/docker/Dockerfile) stamp the version at
// link time:
//
//	go build -ldflags "-X github.com/biobridge/bridge/pkg/buildinfo.version=$(git describe --tags --always --dirty)"
//
// Other builds fall back to the VCS revision the go command records.
package buildinfo

import "runtime/debug"

// VersionSymbol is what -ldflags "-X" sets: VersionSymbol=<version>.
const VersionSymbol = "github.com/biobridge/bridge/pkg/buildinfo.version"

// version is set by the linker; empty in builds that do not set it.
var version string

// Version returns the link-time version, else the VCS revision Go stamped
// into the binary (with "-dirty" for a modified tree), else "devel".
func Version() string {
	if version != "" {
		return version
	}
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "devel"
	}
	return fromSettings(bi.Settings)
}

func fromSettings(settings []debug.BuildSetting) string {
	var rev string
	var dirty bool
	for _, s := range settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.modified":
			dirty = s.Value == "true"
		}
	}
	if rev == "" {
		return "devel"
	}
	if len(rev) > 12 {
		rev = rev[:12]
	}
	if dirty {
		rev += "-dirty"
	}
	return rev
}
