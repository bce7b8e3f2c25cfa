// Package benchenv gives the bench programs of the devstack module what
// each needs before it starts services: a fresh PostgreSQL database and a
// fresh Redis key prefix of its own, each with a function that removes it.
package benchenv

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/redis/go-redis/v9"

	"github.com/biobridge/bridge/pkg/pgstore"
)

// RandomHex returns n random bytes, hex-encoded.
func RandomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// Database creates a fresh database named "bench_<name>_<random>" on the
// server at serverURL and returns its URL and a function that drops it.
func Database(ctx context.Context, serverURL, name string) (string, func() error, error) {
	admin, err := pgx.Connect(ctx, serverURL)
	if err != nil {
		return "", nil, fmt.Errorf("connect to postgres %s: %w", pgstore.Redact(serverURL), err)
	}
	db := "bench_" + name + "_" + RandomHex(6)
	if _, err := admin.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{db}.Sanitize()); err != nil {
		_ = admin.Close(ctx)
		return "", nil, fmt.Errorf("create database: %w", err)
	}
	drop := func() error {
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		defer cancel()
		defer func() { _ = admin.Close(dctx) }()
		if _, err := admin.Exec(dctx, "DROP DATABASE IF EXISTS "+pgx.Identifier{db}.Sanitize()+" WITH (FORCE)"); err != nil {
			return fmt.Errorf("drop database %s: %w", db, err)
		}
		return nil
	}
	dbURL, err := pgstore.WithDatabase(serverURL, db)
	if err != nil {
		return "", nil, errors.Join(err, drop())
	}
	return dbURL, drop, nil
}

// RedisPrefix returns a client, a fresh key prefix "bench:<name>:<random>:"
// and a function that deletes every key under it and closes the client.
func RedisPrefix(ctx context.Context, redisURL, name string) (*redis.Client, string, func() error, error) {
	opts, err := redis.ParseURL(redisURL)
	if err != nil {
		return nil, "", nil, errors.New("invalid redis url")
	}
	rdb := redis.NewClient(opts)
	if err := rdb.Ping(ctx).Err(); err != nil {
		_ = rdb.Close()
		return nil, "", nil, fmt.Errorf("ping redis: %w", err)
	}
	prefix := "bench:" + name + ":" + RandomHex(6) + ":"
	clean := func() error {
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		defer cancel()
		var errs []error
		iter := rdb.Scan(dctx, 0, prefix+"*", 500).Iterator()
		for iter.Next(dctx) {
			errs = append(errs, rdb.Unlink(dctx, iter.Val()).Err())
		}
		errs = append(errs, iter.Err(), rdb.Close())
		return errors.Join(errs...)
	}
	return rdb, prefix, clean, nil
}
