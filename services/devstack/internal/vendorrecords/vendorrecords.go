// Package vendorrecords tells the multi-service tests which records an
// emulated vendor user's data becomes once ingest has stored it.
package vendorrecords

import (
	"sort"

	"github.com/biobridge/bridge/emulator"
	"github.com/biobridge/bridge/services/ingest/whoop"
)

// Expected lists the identities ("<source>/<vendor_record_id>") of the
// records emuUser's data at the emulator becomes in persistence, sorted:
// WHOOP sleeps and workouts under their ids, a recovery under its sleep's
// (whoop.RecoveryRecordID), Oura documents under theirs. Unscored WHOOP
// records and other types are not stored.
func Expected(emu *emulator.Emulator, emuUser string) []string {
	var out []string
	for _, r := range emu.ListRecords(emulator.RecordFilter{User: emuUser}) {
		switch {
		case r.Vendor == emulator.Whoop && (r.Type == "sleep" || r.Type == "workout"):
			out = append(out, "whoop/"+r.ID)
		case r.Vendor == emulator.Whoop && r.Type == "recovery":
			out = append(out, "whoop/"+whoop.RecoveryRecordID(r.ID))
		case r.Vendor == emulator.Oura:
			out = append(out, "oura/"+r.ID)
		}
	}
	sort.Strings(out)
	return out
}
