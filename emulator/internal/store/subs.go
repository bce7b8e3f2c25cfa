package store

import (
	"slices"
	"time"
)

// Subscription is an Oura webhook subscription (app-level).
type Subscription struct {
	ID                string    `json:"id"`
	CallbackURL       string    `json:"callback_url"`
	EventType         string    `json:"event_type"`
	DataType          string    `json:"data_type"`
	ExpirationTime    time.Time `json:"expiration_time"`
	VerificationToken string    `json:"-"`
}

// RemoveSubLocked deletes subscription id and reports whether it existed.
// Caller holds Mu.
func (s *State) RemoveSubLocked(id string) bool {
	if _, ok := s.Subs[id]; !ok {
		return false
	}
	delete(s.Subs, id)
	s.SubOrder = slices.DeleteFunc(s.SubOrder, func(x *Subscription) bool { return x.ID == id })
	return true
}
